# A test without nodes (nixpkgs' `nodes = { }`) that makes its machines with
# create_machine from start scripts.
import os

from test_driver.machine import QemuMachine

assert machines == [] and vlans == []
start_script = os.environ["VOUCH_CONFORMANCE_START_SCRIPT"]  # .../run-solo-vm

made = create_machine(start_script, name="made", keep_machine_state=False)
assert isinstance(made, QemuMachine) and made.name == "made"
assert driver.machines == [made]
t.assertEqual(made.succeed("echo from a created machine"), "from a created machine\n")

solo = create_machine(start_script)  # the name comes from the script's file name
t.assertEqual(solo.name, "solo")
t.assertEqual([m.name for m in driver.machines], ["made", "solo"])
t.assertEqual(solo.succeed("echo second"), "second\n")
made.shutdown()
assert not made.booted
