from lx_router.main import create_service
from lx_router.settings import RouterSettings
from lx_platform.runtime import serve

if __name__ == "__main__":
    settings = RouterSettings()
    serve(create_service(settings), settings)
