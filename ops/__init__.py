"""Operating a stack from outside its program: pull-request previews, drift reports and verification.

These modules drive `pulumi` through the Automation API and read the live servers; they are not part of
the Pulumi program or of the `thorbisdb` provider, which is why they live here and not under
components/ (the provider imports every module under components/ at start-up to find its kinds).
"""

#: Exit codes shared by scripts/pr-preview, scripts/drift and scripts/verify.
EXIT_OK = 0
EXIT_FAILED = 1  # the tool itself failed, or (verify) a check failed
EXIT_DESTRUCTIVE = 2
EXIT_DRIFT = 3
