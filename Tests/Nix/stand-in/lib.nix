# STAND-IN, NOT NIXPKGS. A tiny imitation of the parts of nixpkgs' `lib` that
# Vouch's Nix files use, so they can be evaluated where nixpkgs is absent.
# Semantics are simplified: options are leaves named by path, definitions
# merge by priority (mkForce 50 < plain 100 < mkDefault 1000 < option
# default 1500), lists concatenate, attrsets merge shallowly, anything else
# must be defined once (or identically). Defining an undeclared option, or a
# value of the wrong type, throws.
let
  inherit (builtins)
    attrNames concatMap elem filter foldl' genList head isAttrs isBool isFunction isInt
    isList isString length listToAttrs map replaceStrings tail toJSON;

  lib = rec {
    # --- attrsets, lists, strings -------------------------------------------
    genAttrs = names: f: listToAttrs (map (n: { name = n; value = f n; }) names);
    hasAttrByPath = path: set:
      path == [ ] || (isAttrs set && set ? ${head path} && hasAttrByPath (tail path) set.${head path});
    getAttrFromPath = path: set: foldl' (s: n: s.${n}) set path;
    setAttrByPath = path: value:
      if path == [ ] then value else { ${head path} = setAttrByPath (tail path) value; };
    recursiveUpdate = a: b:
      a // builtins.mapAttrs (n: v: if isAttrs v && isAttrs (a.${n} or null) && !(v ? outPath) then recursiveUpdate a.${n} v else v) b;
    concatStringsSep = builtins.concatStringsSep;
    concatMapStringsSep = sep: f: list: concatStringsSep sep (map f list);
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: xs: if c then xs else [ ];
    optionalString = c: s: if c then s else "";
    hasInfix = infix: s: builtins.match ".*${escapeRegex infix}.*" s != null;
    escapeRegex = s: replaceStrings
      [ "\\" "." "*" "+" "?" "(" ")" "[" "]" "{" "}" "|" "^" "$" ]
      [ "\\\\" "\\." "\\*" "\\+" "\\?" "\\(" "\\)" "\\[" "\\]" "\\{" "\\}" "\\|" "\\^" "\\$" ] s;
    escapeShellArg = s: "'${replaceStrings [ "'" ] [ "'\\''" ] (toString s)}'";
    escapeShellArgs = args: concatStringsSep " " (map escapeShellArg args);
    replaceStrings = builtins.replaceStrings;
    makeBinPath = pkgs: concatStringsSep ":" (map (p: "${p}/bin") pkgs);
    getExe' = pkg: bin: "${pkg}/bin/${bin}";
    getExe = pkg: getExe' pkg (pkg.meta.mainProgram or pkg.pname or pkg.name);
    getLib = pkg: pkg;
    getDev = pkg: pkg;
    cleanSourceWith = { src, filter ? _: _: true, ... }: src;
    fakeHash = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    sourceTypes.binaryNativeCode = { };

    # --- the module system, lite -------------------------------------------
    mkOption = attrs: attrs // { _type = "option"; };
    mkOverride = priority: content: { _type = "override"; inherit priority content; };
    mkForce = mkOverride 50;
    mkDefault = mkOverride 1000;

    types = rec {
      mk = name: check: merge: { _type = "type"; inherit name check merge; };
      unique = name: check: mk name check (defs:
        if length (filter (d: d != head defs) defs) == 0 then head defs
        else throw "stand-in lib: option of type ${name} defined more than once, differently");
      str = unique "str" isString;
      bool = unique "bool" isBool;
      int = unique "int" isInt;
      raw = unique "raw" (_: true);
      package = unique "package" (v: isAttrs v && v ? outPath);
      path = unique "path" (v: isString v || builtins.isPath v || (isAttrs v && v ? outPath));
      enum = values: unique "enum" (v: elem v values);
      listOf = t: mk "listOf ${t.name}" (v: isList v && builtins.all t.check v) (defs: concatMap (d: d) defs);
      attrs = mk "attrs" isAttrs (defs: foldl' (a: b: a // b) { } defs);
      lazyAttrsOf = t: attrs;
      attrsOf = t: attrs;
      functionTo = t: unique "function" isFunction;
    };

    # evalModules { modules; specialArgs; } -> { config; options; }
    evalModules = { modules, specialArgs ? { } }:
      let
        args = specialArgs // { inherit lib config options; };
        load = m:
          if builtins.isPath m || isString m then load (import m)
          else
            let
              v = if isFunction m then m args else m;
              # A module without `options` or `config` is all definitions (shorthand).
              body = if v ? options || v ? config then v
                else { config = removeAttrs v [ "imports" "_file" "key" ]; imports = v.imports or [ ]; };
            in
            [ { options = body.options or { }; config = body.config or { }; } ]
            ++ concatMap load (body.imports or [ ]);
        loaded = concatMap load modules;

        # Option declarations: leaves that are mkOption results, by path.
        optionPaths = prefix: tree:
          concatMap (n:
            let v = tree.${n}; in
            if isAttrs v && (v._type or null) == "option" then [ (prefix ++ [ n ]) ]
            else if isAttrs v then optionPaths (prefix ++ [ n ]) v
            else throw "stand-in lib: ${concatStringsSep "." (prefix ++ [ n ])} is not an option")
          (attrNames tree);
        declared = concatMap (m: map (p: { path = p; decl = getAttrFromPath p m.options; }) (optionPaths [ ] m.options)) loaded;
        isOption = v: isAttrs v && (v._type or null) == "option";
        mergeDecls = a: b:
          a // builtins.mapAttrs (n: v: if isAttrs v && !(isOption v) && a ? ${n} then mergeDecls a.${n} v else v) b;
        options = foldl' (acc: m: mergeDecls acc m.options) { } loaded;
        isDeclared = path: builtins.any (d: d.path == path) declared;
        isPrefix = path: builtins.any (d: length d.path > length path && genList (i: builtins.elemAt d.path i) (length path) == path) declared;

        # Every definition must land on a declared option.
        checkDefs = prefix: tree:
          concatMap (n:
            let p = prefix ++ [ n ]; in
            if isDeclared p then [ ]
            else if isPrefix p && isAttrs tree.${n} then checkDefs p tree.${n}
            else throw "stand-in lib: the option `${concatStringsSep "." p}' does not exist")
          (attrNames tree);
        undeclared = concatMap (m: checkDefs [ ] m.config) loaded;

        valueOf = path: opt:
          let
            d = { inherit path; };
            defs = concatMap (m:
              if hasAttrByPath d.path m.config then
                let v = getAttrFromPath d.path m.config; in
                [ (if isAttrs v && (v._type or null) == "override" then { inherit (v) priority; value = v.content; } else { priority = 100; value = v; }) ]
              else [ ]) loaded
              ++ optional (opt ? default) { priority = 1500; value = opt.default; };
            best = foldl' (a: b: if b.priority < a then b.priority else a) 9999 defs;
            chosen = map (x: x.value) (filter (x: x.priority == best) defs);
            name = concatStringsSep "." d.path;
            merged = opt.type.merge chosen;
          in
          if defs == [ ] then throw "stand-in lib: the option `${name}' is used but not defined"
          else if !(builtins.all opt.type.check chosen) then throw "stand-in lib: the option `${name}' is not of type ${opt.type.name}"
          else merged;
        # Built from the declarations' shape, so that values stay lazy.
        configOf = path: tree:
          builtins.mapAttrs (n: v: if isOption v then valueOf (path ++ [ n ]) v else configOf (path ++ [ n ]) v) tree;
        config = builtins.seq (length undeclared) (configOf [ ] options);
      in
      { inherit config options; };
  };
in
lib
