"""Fault injection for client tests, from an environment variable such as
'PUT /drives/rootfs=400,GET /=hang,vsock=silent'.

API entries are 'METHOD PATH=ACTION' (ACTION: 400, close, hang, close-mid);
'vsock=refuse' closes every CONNECT, 'vsock=silent' answers OK and then
relays nothing from the guest."""

API_ACTIONS = ("400", "close", "hang", "close-mid")
VSOCK_ACTIONS = ("refuse", "silent")


class Faults:
    def __init__(self, spec):
        self.api, self.vsock = {}, None
        for item in filter(None, (s.strip() for s in (spec or "").split(","))):
            key, _, action = item.rpartition("=")
            if key == "vsock":
                if action not in VSOCK_ACTIONS:
                    raise ValueError("bad vsock fault %r" % item)
                self.vsock = action
                continue
            method, _, path = key.partition(" ")
            if action not in API_ACTIONS or not path.startswith("/"):
                raise ValueError("bad fault %r (want 'METHOD /path=%s')" % (item, "|".join(API_ACTIONS)))
            self.api[(method.upper(), path)] = action

    def for_request(self, method, path):
        return self.api.get((method.upper(), path))
