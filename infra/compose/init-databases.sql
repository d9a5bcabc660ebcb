-- One PostgreSQL, two stores: MLflow's tracking store and Prefect's database (run once, on first start).
CREATE DATABASE mlflow OWNER dualtoken;
CREATE DATABASE prefect OWNER dualtoken;
