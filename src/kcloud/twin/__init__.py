"""The digital twin of a farm: what a farm would do under a load, before anyone buys or moves it.

- `kcloud.twin.sim`: the discrete-event simulation of replicas, their batchers and the router;
- `kcloud.twin.load`: arrival processes (Poisson, bursty, diurnal, recorded traces);
- `kcloud.twin.scenario`: a twin run's input file (farm, deployments, load) and its placement;
- `kcloud.twin.mlperf`: one device under an MLPerf LoadGen scenario's load (what `kcloud bench`
  reports for an emulated chip under a run's load);
- `kcloud.twin.prices`, `kcloud.twin.cost`: the sourced price table and $ / J per inference.
"""
