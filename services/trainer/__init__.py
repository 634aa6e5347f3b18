"""Training jobs: ``bodyserve train prior`` (:mod:`services.trainer.train_prior`) and publishing
a trained model into the Triton model repository with a hot reload
(:mod:`services.trainer.publish`).

The domain work (mocap ingestion, the diffusion prior, its training loop) lives in
``shared/``; this package only wires it to a command line, files on disk and Triton's
model-control API. It runs the same way from a shell, as a container command
(``python -m services.trainer prior ...``), under the compose profile ``trainer`` and as a
Kubernetes Job (``deploy/kubernetes/trainer-job.yaml``).
"""
