# A NixOS test module that runs the test on Vouch instead of nixpkgs' Python
# driver. Import it into a test and nothing else changes:
#
#   pkgs.testers.runNixOSTest { imports = [ vouch.testModules.default ]; ... }
#
# It replaces the test framework's `driver` option (nixpkgs
# nixos/lib/testing/driver.nix; not read-only) with a wrapper around Vouch's
# `nixos-test-driver`, which takes the Python driver's command line. The
# wrapper gets the same flags driver.nix adds: --config with the framework's
# driverConfigurationFile (driver-configuration.nix), --log-level, and each
# of extraDriverArgs. run.nix then calls `$driver/bin/nixos-test-driver -o
# $out` as usual, and `driverInteractive` is the same wrapper evaluated in the
# framework's `interactive` copy of the test, whose extraDriverArgs carry
# `--interactive` (interactive.nix).
#
# Not here: a snapshot-after-boot option. Vouch's nixos-test-driver refuses
# flags outside nixpkgs' command line (NixpkgsDriverArguments) and no
# environment variable turns boot snapshots on; `vouch run
# --snapshot-after-boot` has it. Adding the flag to nixos-test-driver is left
# for later.
#
# This file is a function of the flake's packages (for vouch.package's
# default); flake.nix applies it. Without the flake, call it with {}.
{ vouchPackages ? { } }:
{
  config,
  lib,
  hostPkgs,
  ...
}:
let
  cfg = config.vouch;
  inherit (lib) mkOption types;
  system = hostPkgs.stdenv.hostPlatform.system;

  # Vouch's driver command line, after the program name. Each word is one
  # argument (makeWrapper's --add-flags gets it shell-quoted).
  driverArgs =
    [
      "--config"
      "${config.driverConfigurationFile}"
      "--log-level"
      config.logLevel
    ]
    ++ config.extraDriverArgs
    ++ cfg.extraArgs;

  # What Vouch runs besides the start scripts: QEMU for its own monitor use,
  # vde_switch for the test VLANs, python3 for the test script.
  runtimePath = lib.makeBinPath [
    config.qemu.package
    hostPkgs.vde2
    hostPkgs.python3
  ];

  driver =
    hostPkgs.runCommand "vouch-test-driver-${config.name}"
      {
        nativeBuildInputs = [ hostPkgs.makeWrapper ];
        preferLocalBuild = true;
        passthru = config.passthru // {
          vouchDriverArgs = driverArgs;
        };
        meta = config.meta // {
          mainProgram = "nixos-test-driver";
        };
      }
      ''
        mkdir -p $out/bin
        cp ${config.driverConfiguration.test_script} $out/test-script
        makeWrapper ${lib.getExe' cfg.package "nixos-test-driver"} $out/bin/nixos-test-driver \
          ${lib.concatMapStringsSep " \\\n  " (arg: "--add-flags ${lib.escapeShellArg (lib.escapeShellArg arg)}") driverArgs} \
          --prefix PATH : ${lib.escapeShellArg runtimePath}
      '';
in
{
  options.vouch = {
    package = mkOption {
      type = types.package;
      default = vouchPackages.${system}.default or hostPkgs.vouch;
      defaultText = "vouch.packages.\${system}.default";
      description = "The Vouch package whose nixos-test-driver runs the test.";
    };
    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--keep-machine-state" ];
      description = "More arguments for Vouch's nixos-test-driver, after extraDriverArgs.";
    };
  };

  config.driver = lib.mkForce driver;
}
