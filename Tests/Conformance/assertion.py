# A failed unittest-style assertion in a helper function.
def check_kernel():
    release = solo.succeed("uname -s").strip()
    t.assertEqual(release, "Plan9")


check_kernel()
