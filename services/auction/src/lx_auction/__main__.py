from lx_platform.runtime import serve

from lx_auction.main import create_service
from lx_auction.settings import AuctionSettings

if __name__ == "__main__":
    settings = AuctionSettings()
    serve(create_service(settings), settings)
