"""docker/ validated without a container engine: the compose file, Dockerfiles and probe.

``composefile`` reads docker/compose.yaml the way Compose does (YAML merge keys, ``${...}``
interpolation); ``dockerfile`` splits a Dockerfile into stages and instructions. The tests
check both against the settings and commands the code actually has.
"""
