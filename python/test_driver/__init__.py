"""nixpkgs' ``test_driver`` package, as far as test scripts import from it,
backed by Vouch (``vouch_driver``): ``from test_driver.errors import
RequestedAssertionFailed`` and the like work unchanged."""
