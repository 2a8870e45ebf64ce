-- One PostgreSQL server, one database per service (run once, on an empty cluster).
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
