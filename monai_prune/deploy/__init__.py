"""MONAI Deploy: run compressed bundles on DICOM (operators, apps' runner), package them (MAP folder, Triton).

The MONAI Deploy App SDK (``pip install 'monai-prune[deploy]'``) is imported only by the modules that need it:
``monai_prune.deploy.models`` (which model file and backend a compressed bundle runs with, checksums) and
``monai_prune.deploy.dicom`` (synthetic DICOM writers, pre-flight checks) work without it.
"""
