"""Operating a stack from outside its program: pull-request previews, drift reports and verification.

These modules drive `pulumi` through the Automation API and read the live servers; they are neither the
Pulumi program nor the `thorbisdb` provider, which is why they live here and not under components/. They
read the kinds (components/registry.py) to render a change's SQL and to judge what it loses.
"""

#: Exit codes shared by scripts/pr-preview, scripts/drift and scripts/verify.
EXIT_OK = 0
EXIT_FAILED = 1  # the tool itself failed, or (verify) a check failed
EXIT_DESTRUCTIVE = 2
EXIT_DRIFT = 3
