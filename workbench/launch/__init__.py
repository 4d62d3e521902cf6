"""Process backends: `local` (a detached worker process on this machine), `ssh` (a
configured host, mirrored into the local store), `distributed` (torchrun ranks of one
run) and `nodes` (multi-node runs); `control` picks one. See docs/ARCHITECTURE.md."""
