"""DNAVec's sequence classifier for transformers: BERT whose pooler reads the mean of the k-mer token states.

`dnavec classify` writes it (fine-tuning pooling "mean", the default). config.json names it through
auto_map with model_type "dnavec_bert", so that loading needs trust_remote_code=True and, without it,
stops with an error instead of building a BertForSequenceClassification that reads [CLS]. The weight
names are BertForSequenceClassification's. Needs torch and transformers only.
"""

from torch import nn
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

FIRST_KMER_ID = 5  # [PAD] [UNK] [CLS] [SEP] [MASK] come first: no k-mer, never pooled


class DNAVecBertConfig(BertConfig):
    model_type = "dnavec_bert"


class DNAVecBertForSequenceClassification(BertPreTrainedModel):
    """Per window: encoder, the mean of the k-mer token states, BERT's pooler (tanh(dense(.))), dropout and
    the classifier dense -> logits (dnavec predict averages a long sequence's window logits)."""

    config_class = DNAVecBertConfig

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=True)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if input_ids is None:
            raise ValueError("DNAVecBertForSequenceClassification needs input_ids: it pools the k-mer tokens")
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        kmers = input_ids >= FIRST_KMER_ID
        if attention_mask is not None:
            kmers = kmers & (attention_mask > 0)
        kmers = kmers.unsqueeze(-1).to(states.dtype)
        mean = (states * kmers).sum(1) / kmers.sum(1).clamp(min=1.0)
        pooled = self.bert.pooler.activation(self.bert.pooler.dense(mean))
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)

