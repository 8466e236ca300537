# Fails on purpose: Vouch saves the screen of every machine with a display.
start_all()
with subtest("a check that fails"):
    shown.succeed("echo on the way down; exit 5")
