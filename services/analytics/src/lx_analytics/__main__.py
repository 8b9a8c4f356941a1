from lx_platform.runtime import serve

from lx_analytics.main import create_service
from lx_analytics.settings import AnalyticsSettings

if __name__ == "__main__":
    settings = AnalyticsSettings()
    serve(create_service(settings), settings)
