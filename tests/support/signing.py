"""Signing requests as boto3 does, or with chosen headers left out of the signature."""

from botocore.auth import SigV4Auth


class SignerLeavingOut(SigV4Auth):
    """botocore's signer for SageMaker, leaving some headers out of SignedHeaders (they are still sent)."""

    def __init__(self, credentials, leave_out=()):
        super().__init__(credentials, "sagemaker", "us-east-1")
        self.leave_out = leave_out

    def headers_to_sign(self, request):
        headers = super().headers_to_sign(request)
        for name in self.leave_out:
            del headers[name]
        return headers
