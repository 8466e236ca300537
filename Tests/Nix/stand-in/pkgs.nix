# STAND-IN, NOT NIXPKGS. A fake package set: every "package" is an attrset
# that records the arguments it was made with and has a made-up store path.
# Nothing here builds anything.
{ lib ? import ./lib.nix, system ? "x86_64-linux" }:
let
  fake = name: extra: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta = { };
  } // extra;
  pkgs = {
    inherit lib;
    stdenv = {
      hostPlatform = { inherit system; };
      cc.cc.lib = fake "gcc-lib" { };
      mkDerivation = args:
        let a = if builtins.isFunction args then args a else args; in
        fake "${a.pname or "unnamed"}-${a.version or "0"}" { standInArgs = a; inherit (a) pname; version = a.version or null; meta = a.meta or { }; }
        // (a.passthru or { });
    };
    runCommand = name: env: buildCommand:
      fake name { standInArgs = env; inherit buildCommand; meta = env.meta or { }; } // (env.passthru or { });
    writeText = name: text: fake name { inherit text; };
    writeShellScript = name: text: fake name { text = "#!/bin/sh\n" + text; };
    writers.writeJSON = name: value: fake name { text = builtins.toJSON value; };
    fetchurl = args: fake "fetchurl" { standInArgs = args; };
    fetchFromGitHub = args: fake "${args.repo}-source" { standInArgs = args; };
    callPackage = f: overrides:
      let fn = if builtins.isFunction f then f else import f;
      in fn (builtins.intersectAttrs (builtins.functionArgs fn) pkgs // overrides);
  }
  // lib.genAttrs [
    "autoPatchelfHook" "makeWrapper" "curl" "libedit" "libuuid" "libxml2" "ncurses"
    "python3" "sqlite" "zlib" "glibc" "gcc-unwrapped" "qemu" "qemu_test" "vde2"
  ] (n: fake n { });
in
pkgs
