"""kcloud.app: the composition root. It builds the product from the packages below it (the
gateway, the control plane that owns every replica, tenancy) and serves it; the CLI calls it.

Nothing below imports it. `kcloud.app.stack` wires the parts, `kcloud.app.serve` is `kcloud up`,
`kcloud.app.background` runs the same stack in a thread for tests and benchmarks.
"""
