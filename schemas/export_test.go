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

// BatchItemSizes returns the sizes of the items batchItems finds, which
// DecodeBatch enforces MaxEventBytes on, for the fuzz test.
func BatchItemSizes(body []byte) []int {
	items := batchItems(body)
	if items == nil {
		return nil
	}
	sizes := make([]int, len(items))
	for i, it := range items {
		sizes[i] = len(it)
	}
	return sizes
}

// ParseJSON exposes parseJSON to the fuzz test, which holds it to
// jsonschema.UnmarshalJSON.
var ParseJSON = parseJSON

// MessageIDPattern and MatchMessageID expose the messageId pattern and its
// matcher to the test that holds them to Go's regexp.
const MessageIDPattern = messageIDPattern

func MatchMessageID(s string) bool { return noControlChars{}.MatchString(s) }
