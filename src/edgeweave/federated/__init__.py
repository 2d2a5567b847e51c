"""Federated LoRA on Flower 1.41 (Message API) for heterogeneous IoT clients.

Modules: ``aggregate`` (pure maths: FedAvg, zero-pad/truncate, SVD redistribution,
FedAdam), ``hetero`` (tiers, FedRolex rolling windows), ``tasks`` (non-IID IoT data and
held-out evaluation), ``strategy`` (the Flower strategy), ``client`` (the ClientApp),
``simulation`` (in-process Grid), ``run`` (simulate / ServerApp), ``deploy`` (SuperLink +
SuperNodes with TLS and node authentication on loopback). Flower is imported lazily.
"""
