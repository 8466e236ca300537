# Vouch, built with SwiftPM offline, installed as scripts/install lays it out:
#   bin/vouch, bin/nixos-test-driver -> lib/vouch/vouch
#   lib/vouch/{vouch,libVouch.so,Modules/,CVouch.modulemap,include/,python/}
#   share/vouch/images/ (the guest image recipe)
#
# The one SwiftPM dependency, swift-argument-parser, is fetched by Nix at the
# revision Package.resolved pins, and Package.swift's URL dependency is
# rewritten to that local copy, so SwiftPM never touches the network. To move
# it: update `argumentParser` below (rev and hash) to the new Package.resolved.
#
# NOT VERIFIED: never built (the machine this was written on has no nixpkgs).
{
  lib,
  stdenv,
  fetchFromGitHub,
  swift-toolchain,
  glibc,
  gcc-unwrapped,
  doCheck ? true,
}:
let
  argumentParser = fetchFromGitHub {
    owner = "apple";
    repo = "swift-argument-parser";
    rev = "436bde4bb9489201ca6662f5cf94ec45fa8e244e"; # 1.8.2
    # Computed locally with nix-hash over `git archive` of that revision,
    # not by a Nix fetch (see README, "From Nix").
    hash = "sha256-87davPixt6+/NIuYi2HSc/L6SJqfQClToWPK89N3ToQ=";
  };
  # swiftc links through the toolchain's clang, which looks for glibc under /usr.
  linkerFlags = [
    "-Xswiftc" "-Xclang-linker" "-Xswiftc" "-B${lib.getLib glibc}/lib"
    "-Xswiftc" "-Xclang-linker" "-Xswiftc" "--gcc-toolchain=${gcc-unwrapped}"
  ];
  swiftBuild = args: lib.escapeShellArgs ([ "swift" "build" "-c" "release" "--disable-automatic-resolution" ] ++ linkerFlags ++ args);
in
stdenv.mkDerivation {
  pname = "vouch";
  version = "0.1.0";
  src = lib.cleanSourceWith {
    src = ../.;
    filter = path: type: !(lib.elem (baseNameOf path) [ ".build" ".cache" "vouch-out" "Package.resolved" ]);
  };
  nativeBuildInputs = [ swift-toolchain ];
  env = {
    CPATH = "${lib.getDev glibc}/include";
    LIBRARY_PATH = "${lib.getLib glibc}/lib:${stdenv.cc.cc.lib}/lib";
  };
  postPatch = ''
    # The dependency's identity comes from its directory name, so keep it.
    cp -r ${argumentParser} "$NIX_BUILD_TOP/swift-argument-parser"
    chmod -R u+w "$NIX_BUILD_TOP/swift-argument-parser"
    substituteInPlace Package.swift --replace-fail \
      '.package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0")' \
      ".package(path: \"$NIX_BUILD_TOP/swift-argument-parser\")"
    patchShebangs scripts
  '';
  buildPhase = ''
    runHook preBuild
    export HOME=$TMPDIR
    ${swiftBuild [ "--product" "vouch" ]}
    ${swiftBuild [ "--product" "Vouch" ]}
    runHook postBuild
  '';
  inherit doCheck;
  # Unit tests only (fakes on a pty); the integration tests boot VMs.
  checkPhase = ''
    runHook preCheck
    ${swiftBuild [ "--build-tests" ]}
    swift test -c release --skip-build --parallel --filter VouchTests
    runHook postCheck
  '';
  installPhase = ''
    runHook preInstall
    scripts/install --from .build/release $out
    runHook postInstall
  '';
  meta = {
    description = "NixOS-style VM test driver in Swift";
    mainProgram = "vouch";
    platforms = [ "x86_64-linux" ];
  };
}
