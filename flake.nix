{
  description = "Vouch: NixOS-style VM tests driven from Swift, with nixpkgs' test scripts unchanged";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      # The swift.org toolchain this pins exists for x86_64 here (nix/swift-toolchain.nix).
      systems = [ "x86_64-linux" ];
      forSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      vouchFor = pkgs: pkgs.callPackage ./nix/package.nix {
        swift-toolchain = pkgs.callPackage ./nix/swift-toolchain.nix { };
      };
      testModule = import ./nix/test-module.nix { vouchPackages = self.packages; };
    in
    {
      packages = forSystems (pkgs: {
        default = vouchFor pkgs;
        swift-toolchain = pkgs.callPackage ./nix/swift-toolchain.nix { };
      });

      # The package build runs the unit tests (checkPhase).
      checks = forSystems (pkgs: {
        vouch = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      });

      overlays.default = final: prev: { vouch = vouchFor final; };

      # imports = [ vouch.testModules.default ] in any NixOS test.
      testModules.default = testModule;

      lib = {
        # runNixOSTest pkgs test: pkgs.testers.runNixOSTest, on Vouch.
        runNixOSTest =
          pkgs: test:
          pkgs.testers.runNixOSTest {
            imports = [
              testModule
              test
            ];
          };
      };
    };
}
