# Evaluation tests of Vouch's Nix files against the stand-in of nixpkgs
# (stand-in/: a tiny lib, fake packages, the test framework's options).
# Run by Tests/Nix/run:  nix-instantiate --eval --strict Tests/Nix/eval-tests.nix
# The result is the list of passed test names; any failure throws, naming it.
let
  lib = import ./stand-in/lib.nix;
  basePkgs = import ./stand-in/pkgs.nix { inherit lib; };
  framework = import ./stand-in/test-framework.nix { inherit lib; pkgs = basePkgs; };
  pkgs = basePkgs // { testers.runNixOSTest = framework.runNixOSTest; };
  inherit (builtins) all any attrNames elem fromJSON isFunction;
  contains = lib.hasInfix;
  forces = x: (builtins.tryEval (builtins.deepSeq x x)).success;

  fakeVouch = pkgs.runCommand "vouch-fake" { } "";
  testModule = import ../../nix/test-module.nix { };
  mkTest = extra: framework.runNixOSTest {
    imports = [ testModule extra ];
    name = "t";
    nodes.a = { };
    testScript = "start_all()";
    vouch.package = fakeVouch;
  };

  plain = mkTest { };
  tuned = mkTest {
    logLevel = "debug";
    extraDriverArgs = [ "--junit-xml" "report.xml" ];
    vouch.extraArgs = [ "--keep-machine-state" "an arg with spaces" ];
  };
  configFile = "${plain.driverConfigurationFile}";

  # The flake's outputs, with the stand-in as its nixpkgs input.
  flake = import ../../flake.nix;
  outputs = flake.outputs {
    self = outputs;
    nixpkgs = { inherit lib; legacyPackages.x86_64-linux = pkgs; };
  };
  vouchPkg = outputs.packages.x86_64-linux.default;
  viaFlake = import ../../examples/nix/switch-existing-test.nix { vouch = outputs; };
  example = pkgs.testers.runNixOSTest viaFlake;

  tests = {
    # --- the driver wrapper ------------------------------------------------
    driverReplaced = plain.driver.name == "vouch-test-driver-t";
    withoutModuleIsPython = (framework.runNixOSTest { name = "p"; testScript = ""; }).driver.name == "nixos-test-driver-p";
    commandLine = plain.driver.vouchDriverArgs == [ "--config" configFile "--log-level" "info" ];
    wrapsNixosTestDriver = contains "makeWrapper ${fakeVouch}/bin/nixos-test-driver $out/bin/nixos-test-driver" plain.driver.buildCommand;
    scriptHasEveryArg = all (arg: contains arg plain.driver.buildCommand) plain.driver.vouchDriverArgs;
    configIsTheJSON = (fromJSON plain.driverConfigurationFile.text).vms.a.name == "a";
    mainProgram = plain.driver.meta.mainProgram == "nixos-test-driver";
    copiesTestScript = contains "${plain.driverConfiguration.test_script}" plain.driver.buildCommand;
    qemuOnPath = contains "${pkgs.qemu_test}/bin" plain.driver.buildCommand;
    notInteractive = !(elem "--interactive" plain.driver.vouchDriverArgs);
    # --- options -----------------------------------------------------------
    logLevelAndExtras = tuned.driver.vouchDriverArgs == [
      "--config" "${tuned.driverConfigurationFile}" "--log-level" "debug"
      "--junit-xml" "report.xml" "--keep-machine-state" "an arg with spaces"
    ];
    extraArgQuoted = contains (lib.escapeShellArg (lib.escapeShellArg "an arg with spaces")) tuned.driver.buildCommand;
    badLogLevelRefused = !(forces (mkTest { logLevel = "loud"; }).driver.vouchDriverArgs);
    badExtraArgsRefused = !(forces (mkTest { vouch.extraArgs = "--oops"; }).driver.vouchDriverArgs);
    undeclaredRefused = !(forces (mkTest { vouch.snapshotAfterBoot = true; }).driver.vouchDriverArgs);
    # --- the interactive driver --------------------------------------------
    interactive = plain.driverInteractive.vouchDriverArgs == [ "--config" configFile "--log-level" "info" "--interactive" ];
    interactiveWrapper = contains "--interactive" plain.driverInteractive.buildCommand
      && contains "${pkgs.qemu}/bin" plain.driverInteractive.buildCommand;
    # --- the flake ---------------------------------------------------------
    flakeOutputs = attrNames outputs == [ "checks" "lib" "overlays" "packages" "testModules" ];
    flakePackages = attrNames outputs.packages == [ "x86_64-linux" ]
      && attrNames outputs.packages.x86_64-linux == [ "default" "swift-toolchain" ];
    flakeChecks = attrNames outputs.checks.x86_64-linux == [ "vouch" ];
    packageIsVouch = vouchPkg.pname == "vouch" && vouchPkg.meta.mainProgram == "vouch";
    packageBuildsWithToolchain = any (p: (p.pname or "") == "swift-toolchain-bin" && p.version == "6.3.1") vouchPkg.standInArgs.nativeBuildInputs;
    packageInstallsLikeScript = contains "scripts/install --from .build/release $out" vouchPkg.standInArgs.installPhase;
    packageOffline = contains "--disable-automatic-resolution" vouchPkg.standInArgs.buildPhase
      && contains ".package(path:" vouchPkg.standInArgs.postPatch;
    packageRunsUnitTests = vouchPkg.standInArgs.doCheck && contains "--filter VouchTests" vouchPkg.standInArgs.checkPhase;
    overlay = isFunction outputs.overlays.default
      && (outputs.overlays.default pkgs pkgs).vouch.pname == "vouch";
    flakeLib = (outputs.lib.runNixOSTest pkgs { name = "l"; testScript = ""; }).driver.name == "vouch-test-driver-l";
    # --- the example: one import, and its default package is the flake's ---
    exampleOnVouch = example.driver.name == "vouch-test-driver-nginx-two-nodes"
      && contains "${vouchPkg}/bin/nixos-test-driver" example.driver.buildCommand
      && attrNames example.driverConfiguration.vms == [ "client" "server" ];
  };
  failed = builtins.filter (n: tests.${n} != true) (attrNames tests);
in
if failed == [ ] then attrNames tests
else throw "Nix eval tests failed: ${lib.concatStringsSep ", " failed}"
