module github.com/shardflow/shardflow/services

go 1.26.0
