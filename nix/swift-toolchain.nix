# The official swift.org Linux toolchain, unpacked and patched for Nix.
#
# Vouch needs Swift 6.2 or newer (Package.swift: swift-tools-version 6.2).
# nixpkgs' own Swift has long been 5.x (pkgs/development/compilers/swift,
# sources.nix: 5.10.1); a rewrite of its Swift package set at 6.2/6.3 exists
# in some nixpkgs versions, but which one a given nixpkgs input has is not
# known here, so this flake pins the swift.org release that Vouch's CI uses.
#
# NOT VERIFIED: this derivation has never been built. The hash below is
# lib.fakeHash on purpose: the first `nix build` fails and prints the real
# one (swift.org publishes signatures, not checksums, next to its tarballs).
{
  lib,
  stdenv,
  fetchurl,
  autoPatchelfHook,
  curl,
  libedit,
  libuuid,
  libxml2,
  ncurses,
  python3,
  sqlite,
  zlib,
}:
let
  version = "6.3.1";
  platform = "ubuntu24.04"; # any glibc build works once patched; this one is the most common
in
stdenv.mkDerivation {
  pname = "swift-toolchain-bin";
  inherit version;
  src = fetchurl {
    url = "https://download.swift.org/swift-${version}-release/${lib.replaceStrings [ "." ] [ "" ] platform}/swift-${version}-RELEASE/swift-${version}-RELEASE-${platform}.tar.gz";
    hash = lib.fakeHash; # FAKE: replace with the hash the first build prints
  };
  nativeBuildInputs = [ autoPatchelfHook ];
  buildInputs = [
    stdenv.cc.cc.lib
    curl
    libedit
    libuuid
    libxml2
    ncurses
    python3
    sqlite
    zlib
  ];
  # lldb's Python plugin wants a libpython of the build's own minor version.
  autoPatchelfIgnoreMissingDeps = [ "libpython3.*" ];
  dontConfigure = true;
  dontBuild = true;
  dontStrip = true;
  installPhase = ''
    runHook preInstall
    mkdir -p $out
    cp -r usr/* $out/
    runHook postInstall
  '';
  passthru.swiftVersion = version;
  meta = {
    description = "Swift ${version} (swift.org release binaries, patched with autoPatchelfHook)";
    homepage = "https://www.swift.org/install/linux/";
    platforms = [ "x86_64-linux" ];
    sourceProvenance = [ lib.sourceTypes.binaryNativeCode ];
  };
}
