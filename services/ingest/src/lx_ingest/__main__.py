from lx_platform.runtime import serve

from lx_ingest.main import create_service
from lx_ingest.settings import IngestSettings

if __name__ == "__main__":
    settings = IngestSettings()
    serve(create_service(settings), settings)
