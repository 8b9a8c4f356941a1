from lx_platform.runtime import serve

from lx_router.main import create_service
from lx_router.settings import RouterSettings

if __name__ == "__main__":
    settings = RouterSettings()
    serve(create_service(settings), settings)
