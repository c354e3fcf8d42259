module github.com/shardflow/shardflow/integration

go 1.26.0
