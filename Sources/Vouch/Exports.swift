// What test scripts and the CLI get with `import Vouch`: the test API and
// the public types of the layers below it (errors, specs, backends' settings).
@_exported import VouchBackends
@_exported import VouchGuest
@_exported import VouchSupport
@_exported import VouchWire
