from lx_platform.runtime import serve

from lx_admin.main import create_service
from lx_admin.settings import AdminSettings

if __name__ == "__main__":
    settings = AdminSettings()
    serve(create_service(settings), settings)
