from lx_platform.runtime import serve

from lx_billing.main import create_service
from lx_billing.settings import BillingSettings

if __name__ == "__main__":
    settings = BillingSettings()
    serve(create_service(settings), settings)
