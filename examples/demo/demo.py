# The Vouch demo as an unchanged nixpkgs-style Python test script: the same
# two machines as demo.swift, driven with the nixpkgs driver's names.
#   vouch run examples/demo/demo.json --script examples/demo/demo.py
import re

with subtest("boot both machines in parallel"):
    start_all()

with subtest("nginx comes up on the server"):
    server.wait_for_unit("nginx.service")
    server.wait_for_open_port(80)
    status, output = server.execute("systemctl is-active nginx")
    t.assertEqual(status, 0)
    t.assertEqual(output, "active\n")

with subtest("the client fetches the page by hostname"):
    client.succeed("ping -c 1 -W 5 server")
    page = client.succeed("wget -qO- http://server/")
    assert "Welcome to nginx" in page, page
    client.fail("test -e /etc/no-such-file")

with subtest("a cut link makes the fetch fail, and it recovers"):
    server.block()
    client.fail("timeout 5 wget -qO- http://server/")
    server.unblock()
    client.wait_until_succeeds("timeout 5 wget -qO- http://server/", timeout=60)

with subtest("clean shutdown"):
    client.shutdown()
    server.shutdown()
