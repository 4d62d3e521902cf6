"""Starting, stopping and resuming runs, and the processes they live in.

`backends`: the `Backend` protocol (`Local`, `Ssh`, `MultiNode`) and `backend_for` /
`backend_for_spec`, which pick one; the CLI and the screens call only these.
`local` (a detached worker process on this machine), `ssh` (a configured host) and
`mirror` (its runs streamed into the local store), `nodes` (multi-node runs),
`worker` (the process a run lives in), `distributed` (torchrun ranks of one run) and
`queue` (a group's runs in turn). See docs/ARCHITECTURE.md ("Launch")."""
