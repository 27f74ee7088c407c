#!/usr/bin/env bash
# Entrypoint of the unisup Spark image, in the contract Spark on Kubernetes (and so the Spark
# Operator) expects of an image: the pods it creates pass `driver ...` or `executor`, with the
# settings in SPARK_* variables; any other command runs as given (e.g. `unisup extract-logs ...`).
#   driver ARGS    spark-submit in client mode inside the driver pod (ARGS: the properties file,
#                  PythonRunner and local:///opt/unisup/unisup/cli.py with its arguments)
#   executor       an executor JVM that registers with the driver at SPARK_DRIVER_URL
set -euo pipefail

case "${1:-}" in
  driver)
    shift
    cmd=("$SPARK_HOME/bin/spark-submit" --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS:-0.0.0.0}"
         --deploy-mode client "$@")
    ;;
  executor)
    shift
    # Spark passes the executor's JVM options as SPARK_JAVA_OPT_0, _1, ... in that order.
    mapfile -t java_opts < <(env | grep '^SPARK_JAVA_OPT_' | sort -t_ -k4 -n | cut -d= -f2-)
    classpath="${SPARK_CONF_DIR:-$SPARK_HOME/conf}:${SPARK_HOME}/jars/*"
    [[ -n "${SPARK_EXTRA_CLASSPATH:-}" ]] && classpath="$classpath:$SPARK_EXTRA_CLASSPATH"
    [[ -n "${HADOOP_CONF_DIR:-}" ]] && classpath="$HADOOP_CONF_DIR:$classpath"
    cmd=("$JAVA_HOME/bin/java" "${java_opts[@]}" "-Xms$SPARK_EXECUTOR_MEMORY" "-Xmx$SPARK_EXECUTOR_MEMORY"
         -cp "$classpath" org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend
         --driver-url "$SPARK_DRIVER_URL" --executor-id "$SPARK_EXECUTOR_ID" --cores "$SPARK_EXECUTOR_CORES"
         --app-id "$SPARK_APPLICATION_ID" --hostname "$SPARK_EXECUTOR_POD_IP"
         --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" --podName "${SPARK_EXECUTOR_POD_NAME:-}")
    ;;
  *)
    cmd=("$@")
    ;;
esac
# tini reaps the JVM's children and forwards signals (a pod's SIGTERM reaches Spark).
exec /usr/bin/tini -s -- "${cmd[@]}"
