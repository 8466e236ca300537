# nixpkgs' log.error logs and then ends the test (exit 1).
log.error("stopping here on purpose")
raise Exception("never reached")
