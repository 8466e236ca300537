# Screens, keys, consoles and X as nixpkgs' graphical tests drive them, on
# the desktop image: root logged in on tty1, X with twm on vt7.
import datetime as dt
import struct

with subtest("X and its windows"):
    desk.wait_for_x()
    desk.succeed("systemd-run --unit=term -E DISPLAY=:0 xterm -title conformance-term")
    desk.wait_for_window(r"conformance-t\w+", timeout=dt.timedelta(minutes=2))
    assert "conformance-term" in desk.get_window_names()

with subtest("screenshot names as nixpkgs resolves them"):
    desk.screenshot("plain")
    header = (driver.out_dir / "plain.png").read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", header
    t.assertEqual(struct.unpack(">II", header[16:24]), (1024, 768))
    desk.screenshot("named.png")
    assert (driver.out_dir / "named.png").is_file()

with subtest("send_chars into the shell on tty1, read back with the tty calls and OCR"):
    desk.succeed("chvt 1")
    desk.send_chars("echo Typed By Vouch: $((1+1)) > /tmp/typed\n", delay=dt.timedelta(milliseconds=5))
    desk.wait_until_succeeds("grep -qx 'Typed By Vouch: 2' /tmp/typed", timeout=60)
    desk.wait_until_tty_matches("1", r"Typed By Vouch: \$\(\(1\+1\)\)", timeout=60)
    assert "Typed By Vouch" in desk.get_tty_text("1")
    desk.dump_tty_contents("1")
    desk.send_chars("clear; echo reading this screen works\n")
    desk.wait_for_text("screen works", timeout=300)
    variants = desk.get_screen_text_variants()
    t.assertEqual(len(variants), 3)
    assert any("reading" in v for v in variants), variants
    assert "reading" in desk.get_screen_text()
    desk.send_key("ret", delay=0)

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
