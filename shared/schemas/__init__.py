"""Request and result schemas by subject, shared by the gateway, the workers and the command line.

- ``artifacts``: what each job can write, and the content types served;
- ``common``: request bounds and validation helpers;
- ``bodies``: the body parameters every result carries (SMPL-X convention, Anny, camera);
- ``mesh_recovery``, ``poses``, ``lifting``, ``images``: each route's request and result.

A dataset's request is its spec, ``shared.datasets.spec.DatasetSpec`` (the generator reads it
too). HTTP and job types (a job's status, an error body) are the gateway's:
``services.gateway.schemas``.
"""
