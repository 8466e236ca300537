# An existing nixpkgs-style test, run on Vouch by one added import.
# From a flake that has `vouch` as an input:
#
#   checks.x86_64-linux.nginx = pkgs.testers.runNixOSTest (import ./switch-existing-test.nix { inherit vouch; });
#
# `nix build .#checks.x86_64-linux.nginx` runs it; `.driverInteractive` opens
# Vouch's interactive session. Remove the import and it runs on nixpkgs'
# Python driver again, unchanged.
{ vouch }:
{
  imports = [ vouch.testModules.default ]; # the only Vouch line

  name = "nginx-two-nodes";

  nodes.server = {
    services.nginx.enable = true;
    services.nginx.virtualHosts.localhost.root = "/srv/www";
    systemd.tmpfiles.rules = [ "f /srv/www/index.html 0644 root root - hello-from-server" ];
    networking.firewall.allowedTCPPorts = [ 80 ];
  };
  nodes.client = { };

  testScript = ''
    start_all()
    server.wait_for_unit("nginx.service")
    server.wait_for_open_port(80)
    client.wait_for_unit("multi-user.target")
    assert "hello-from-server" in client.succeed("curl -sf http://server/")
  '';
}
