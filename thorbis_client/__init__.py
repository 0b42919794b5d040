"""thorbis_client: how an application uses a thorbis-db stack (README, "The application's data path").

client = ThorbisClient(ClientConfig.from_stack("dev"))
with client.transaction(company_id, user_id) as tx:                  # the primary
    tx.execute("UPDATE customers SET display_name = %s WHERE id = %s", (name, customer_id))
    tx.invalidate("customers", customer_id)
customer = client.cached(company_id, user_id, "customers", customer_id,
                         lambda tx: tx.execute("SELECT ...", (customer_id,)).fetchone()[0])
"""

from thorbis_client.cache import TieredCache
from thorbis_client.client import Fetched, ThorbisClient
from thorbis_client.config import CachePolicy, ClientConfig
from thorbis_client.database import Stats, Transaction

__all__ = ["CachePolicy", "ClientConfig", "Fetched", "Stats", "ThorbisClient", "TieredCache", "Transaction"]
