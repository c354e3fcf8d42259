module github.com/shardflow/shardflow/schemas

go 1.26.0
