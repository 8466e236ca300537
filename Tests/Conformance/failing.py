# A failed command inside a subtest: the test fails with this line number.
with subtest("first passes"):
    solo.succeed("true")

with subtest("second fails"):
    solo.succeed("echo visible-output; exit 4")

solo.succeed("echo never reached")
