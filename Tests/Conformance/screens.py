# Screens, keys and consoles as nixpkgs' graphical tests drive them.
import datetime as dt
import struct

desk.wait_for_unit("multi-user.target")
desk.wait_until_succeeds("test -e /dev/fb0", timeout=120)

with subtest("screenshot names as nixpkgs resolves them"):
    desk.screenshot("plain")
    header = (driver.out_dir / "plain.png").read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", header
    t.assertEqual(struct.unpack(">II", header[16:24]), (1024, 768))
    desk.screenshot("named.png")
    assert (driver.out_dir / "named.png").is_file()

with subtest("send_chars onto tty1, read back with the tty calls"):
    desk.succeed("systemd-run --unit=reader -p TTYPath=/dev/tty1 -p StandardInput=tty "
                 "-p StandardOutput=file:/tmp/typed sh -c 'read -r l; echo \"$l\"'")
    desk.wait_for_unit("reader.service")
    desk.send_chars("Typed By Vouch: 1+1=2\n", delay=dt.timedelta(milliseconds=5))
    desk.wait_until_tty_matches("1", r"Typed By Vouch: 1\+1=2", timeout=60)
    desk.wait_until_succeeds("grep -qx 'Typed By Vouch: 1+1=2' /tmp/typed", timeout=60)
    assert "Typed By Vouch" in desk.get_tty_text("1")
    desk.dump_tty_contents("1")
    desk.send_key("ret", delay=0)

with subtest("OCR"):
    desk.succeed("printf '\\033[2J\\033[H\\n\\n   reading this screen works\\n' > /dev/tty1")
    desk.wait_for_text("screen works", timeout=300)
    variants = desk.get_screen_text_variants()
    t.assertEqual(len(variants), 3)
    assert any("reading" in v for v in variants), variants
    assert isinstance(desk.get_screen_text(), str)

with subtest("send_console"):
    desk.succeed("systemd-run --unit=serial sh -c 'stty -F /dev/ttyS0 -echo raw; head -c 6 /dev/ttyS0 > /tmp/serial'")
    desk.wait_for_unit("serial.service")
    desk.sleep(1)
    desk.send_console("ping!\n")
    desk.wait_until_succeeds("grep -qx 'ping!' /tmp/serial", timeout=60)

with subtest("QMP events"):
    desk.qmp_client.send("stop")
    desk.qmp_client.send("cont")
    # Both happened before these calls: neither is lost.
    desk.wait_for_qmp_event(lambda e: e["event"] == "STOP", timeout=dt.timedelta(seconds=30))
    desk.wait_for_qmp_event(lambda e: e["event"] == "RESUME", timeout=30)

with subtest("without X"):
    with t.assertRaises(Exception) as cm:
        desk.wait_for_x(timeout=3)
    t.assertIn("action timed out", str(cm.exception))
    with t.assertRaises(NotImplementedError) as cm:
        desk.get_window_names()
    t.assertIn("x11-utils", str(cm.exception))
