# STAND-IN, NOT NIXPKGS. The few options of nixpkgs' NixOS test framework
# (nixos/lib/testing/*.nix) that Vouch's test module reads or sets, with the
# framework's defaults as nixpkgs documents them, and a runNixOSTest that
# evaluates a test twice as nixpkgs does: as is (`driver`) and with the
# `interactive` additions (`driverInteractive`). Nodes are not NixOS
# configurations here: each one just gets a fake start script.
{ lib, pkgs }:
let
  inherit (lib) mkOption types;
  framework = { config, hostPkgs, ... }: {
    options = {
      name = mkOption { type = types.str; };
      nodes = mkOption { type = types.attrs; default = { }; };
      testScript = mkOption { type = types.str; };
      passthru = mkOption { type = types.lazyAttrsOf types.raw; default = { }; };
      meta = mkOption { type = types.attrs; default = { }; };
      logLevel = mkOption { type = types.enum [ "debug" "info" "warning" "error" ]; default = "info"; };
      extraDriverArgs = mkOption { type = types.listOf types.str; default = [ ]; };
      globalTimeout = mkOption { type = types.int; default = 3600; };
      qemu.package = mkOption { type = types.package; default = hostPkgs.qemu_test; };
      driverConfiguration = mkOption { type = types.attrs; };
      driverConfigurationFile = mkOption { type = types.path; };
      # Not read-only: a module may replace it (with lib.mkForce, as the default is a plain definition).
      driver = mkOption { type = types.package; };
    };
    config = {
      driverConfiguration = {
        vms = builtins.mapAttrs (name: _: {
          inherit name;
          start_script = "${hostPkgs.writeShellScript "run-${name}-vm" ""}";
        }) config.nodes;
        containers = { };
        vlans = [ 1 ];
        global_timeout = config.globalTimeout;
        enable_ssh_backdoor = false;
        test_script = hostPkgs.writeText "test-script" config.testScript;
      };
      driverConfigurationFile = hostPkgs.writers.writeJSON "driverConfiguration.json" config.driverConfiguration;
      driver = hostPkgs.runCommand "nixos-test-driver-${config.name}" { } "python driver (stand-in)";
    };
  };
  evalTest = extra: module:
    (lib.evalModules {
      modules = [ framework module ] ++ extra;
      specialArgs = { hostPkgs = pkgs; };
    }).config;
in
{
  runNixOSTest = module:
    let
      base = evalTest [ ] module;
      interactive = evalTest [ { extraDriverArgs = [ "--interactive" ]; qemu.package = pkgs.qemu; } ] module;
    in
    base // { driverInteractive = interactive.driver; config = base; };
}
