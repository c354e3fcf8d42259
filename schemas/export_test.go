package schemas

// ValidateBatchWithSchema validates a batch body with batch.schema.json as
// a whole, for tests that check DecodeBatch's item-by-item validation
// against it.
func ValidateBatchWithSchema(body []byte) error {
	obj, err := parseObject(body)
	if err != nil {
		return err
	}
	if err := compiled().batch.Validate(obj); err != nil {
		return newValidationError(err, obj)
	}
	return nil
}

// BatchItemSizes exposes batchItemSizes to the fuzz test.
var BatchItemSizes = batchItemSizes
