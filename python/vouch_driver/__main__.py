"""Entry point Vouch starts: `python3 -m vouch_driver run SCRIPT` runs a
nixpkgs test script; `python3 -m vouch_driver repl [SCRIPT]` opens the
interactive session.  Both need the bridge on fd 3, so run them through
`vouch run` / `vouch repl`, not by hand."""

import sys

from .runner import main

sys.exit(main(sys.argv))
