"""Role images, without a container engine unless one is asked for.

- what goes into each, decided from the lock and the base's digest: ``plan`` (pure);
- the base image by reference or from an OCI layout: ``base``; content-addressed blobs on
  this machine: ``blobs``;
- the layers, written from a staged environment: ``staging``; config, manifest and the SBOM
  (``sbom``, CycloneDX): ``assemble`` and ``oci`` (also OCI layouts and docker archives);
- where an image goes: ``deliver`` (push, ``--oci``, ``--load``), ``remote`` (pushing through
  the registry API), ``engine`` (the only door to docker, for ``--load``), ``progress``;
- the registry client: ``registry`` over ``transport`` (deadlines, capped bodies, redirects
  without credentials), ``credentials`` (the one source of registry logins), ``reference``;
- the verb ``build`` and the CI build matrix ``matrix``.

May import: errors, files, gpucheck, spec, lock, env
"""
