-- One database per service on one local cluster (docker-compose.yml mounts this file
-- into /docker-entrypoint-initdb.d, which runs it once, on an empty data volume).
-- Each service would also create its own database on start; doing it here keeps that
-- step out of the services' startup and lets the cluster be inspected before they run.
CREATE DATABASE lx_admin;
CREATE DATABASE lx_ingest;
CREATE DATABASE lx_router;
CREATE DATABASE lx_delivery;
CREATE DATABASE lx_billing;
CREATE DATABASE lx_analytics;
CREATE DATABASE lx_auction;
