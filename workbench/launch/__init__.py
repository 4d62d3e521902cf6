"""Process backends: `local` (detached subprocess) here; ssh and distributed come later."""
