from lx_platform.runtime import serve

from lx_delivery.main import create_service
from lx_delivery.settings import DeliverySettings

if __name__ == "__main__":
    settings = DeliverySettings()
    serve(create_service(settings), settings)
