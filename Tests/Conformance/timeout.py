# Runs past the global timeout given on the command line.
solo.succeed("true")
solo.succeed("sleep 600")
